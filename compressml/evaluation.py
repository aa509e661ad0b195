"""Rate-distortion evaluation of learned models and classical codecs, through real files.

Every image is written as a real compressed file (a ``.cml`` for learned models,
the codec's own format for classical ones) and decoded back; the rate is the
file's size in bits, header included, over the image's pixels. Quality is
measured on the 8-bit RGB reconstruction against the 8-bit RGB original.

Several checkpoints (e.g. one per rate-distortion trade-off) form one learned
curve. Outputs: per-image records, averages per (codec, setting), curves in
CompressAI's results-JSON format, BD-rates of each learned curve against every
other curve, and an RD plot.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from compressml import metrics
from compressml.baselines import ClassicalCodec, match_size
from compressml.codec import container as cml
from compressml.codec.families import FAMILIES, family, family_of
from compressml.codec.files import CodecModel, atomic_write
from compressml.codec.lae import SourceImage
from compressml.errors import ConfigError, DataError

RECORD_FIELDS = (
    "codec",
    "setting",
    "image",
    "height",
    "width",
    "bytes",
    "bpp",
    "bpsp",
    "psnr",
    "ms_ssim",
    "ms_ssim_db",
    "encode_s",
    "decode_s",
    "exact",
    "max_abs_error",
    "block_bytes_max",
    "block_bytes_mean",
    "block_budget",
)
AVERAGED = ("bpp", "bpsp", "psnr", "ms_ssim", "ms_ssim_db", "encode_s", "decode_s")


@dataclass
class EvalImage:
    name: str
    rgb: np.ndarray  # uint8 (H, W, 3): the reference every codec is measured against

    @classmethod
    def from_tensor(cls, name: str, x: torch.Tensor) -> EvalImage:
        """(3, H, W) floats in [0, 1] to the 8-bit reference."""
        return cls(name, x.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).contiguous().numpy())

    @property
    def pixels(self) -> int:
        return self.rgb.shape[0] * self.rgb.shape[1]


def _as_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(rgb, requirements=["C", "W"])).permute(2, 0, 1)[None].float().div(255)


def quality(reconstruction: np.ndarray, reference: np.ndarray) -> dict:
    """PSNR (dB) and MS-SSIM (also in dB) of an 8-bit RGB reconstruction."""
    x_hat, x = _as_tensor(reconstruction), _as_tensor(reference)
    value = float(metrics.ms_ssim(x_hat, x))
    return {"psnr": float(metrics.psnr(x_hat, x)), "ms_ssim": value, "ms_ssim_db": metrics.ms_ssim_db(value)}


def _record(codec: str, setting, image: EvalImage, num_bytes: int, reconstruction: np.ndarray, enc: float, dec: float) -> dict:
    h, w = image.rgb.shape[:2]
    return {
        "codec": codec,
        "setting": setting,
        "image": image.name,
        "height": h,
        "width": w,
        "bytes": num_bytes,
        "bpp": 8.0 * num_bytes / (h * w),
        "bpsp": 8.0 * num_bytes / (3 * h * w),
        **quality(reconstruction, image.rgb),
        "encode_s": enc,
        "decode_s": dec,
        "exact": bool(np.array_equal(reconstruction, image.rgb)),
        "max_abs_error": int(np.abs(reconstruction.astype(np.int16) - image.rgb.astype(np.int16)).max(initial=0)),
    }


def _file_name(image: EvalImage, suffix: str) -> str:
    return Path(image.name).with_suffix(suffix).name


def evaluate_learned(
    model: CodecModel, label: str, setting: str, images: Sequence[EvalImage], out_dir: Path, keep: dict | None = None, keep_images: int = 0
) -> list[dict]:
    """Compress each image to ``out_dir/<name>.cml``, decode that file, and measure both. The first
    ``keep_images`` decoded images go into ``keep[(label, setting, name)]`` (for the report's crops)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for image in images:
        path = out_dir / _file_name(image, ".cml")
        start = time.perf_counter()
        container = model.encode(SourceImage(rgb=_as_tensor(image.rgb)[0]))
        data = container.to_bytes()
        atomic_write(path, lambda tmp: tmp.write_bytes(data), force=True)
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        decoded = model.decode(cml.parse(path.read_bytes()))
        decode_s = time.perf_counter() - start
        rgb = EvalImage.from_tensor(image.name, decoded.rgb).rgb
        if keep is not None and len(records) < keep_images:
            keep[(label, str(setting), image.name)] = rgb
        record = _record(label, setting, image, path.stat().st_size, rgb, encode_s, decode_s)
        if model.family in FAMILIES:  # a learned family (the hybrid codec has no extras)
            record.update(family(model.family).record_extras(model.net, container))
        records.append(record)
    return records


def size_matched(codec: ClassicalCodec, image: EvalImage, max_bytes: int) -> dict | None:
    """The classical codec's best quality setting whose file is no larger than ``max_bytes``, measured."""
    best = match_size(codec, image.rgb, max_bytes)
    if best is None:
        return None
    q, data = best
    return _record(codec.name, q, image, len(data), codec.decode(data, image.rgb.shape[:2]), 0.0, 0.0)


def matched_comparison(
    records: Sequence[dict], learned: Sequence[str], codecs: Sequence[ClassicalCodec], images: Sequence[EvalImage]
) -> list[dict]:
    """For each learned point, each codec at the same file size per image (no larger), averaged."""
    if not codecs:
        return []
    by_name = {i.name: i for i in images}
    rows = []
    for curve, setting in dict.fromkeys((r["codec"], r["setting"]) for r in records if r["codec"] in learned):
        ours = [r for r in records if r["codec"] == curve and r["setting"] == setting]
        row = {"learned": curve, "setting": setting, "ours": {k: float(np.mean([r[k] for r in ours])) for k in ("bpp", "psnr", "ms_ssim")}}
        for codec in codecs:
            matched = [size_matched(codec, by_name[r["image"]], r["bytes"]) for r in ours]
            if all(m is not None for m in matched):
                row[codec.name] = {k: float(np.mean([m[k] for m in matched])) for k in ("bpp", "psnr", "ms_ssim")}
                row[codec.name]["quality"] = [m["setting"] for m in matched]
            else:
                row[codec.name] = None  # some image cannot be made that small
        rows.append(row)
    return rows


def evaluate_classical(
    codec: ClassicalCodec, settings: Sequence[int], images: Sequence[EvalImage], out_dir: Path | None = None
) -> list[dict]:
    """Each image at each setting through Pillow; files are kept in ``out_dir`` when given."""
    records = []
    for setting in settings:
        for image in images:
            start = time.perf_counter()
            data = codec.encode(image.rgb, setting)
            encode_s = time.perf_counter() - start
            start = time.perf_counter()
            rgb = codec.decode(data, image.rgb.shape[:2])
            decode_s = time.perf_counter() - start
            if out_dir is not None:
                path = out_dir / codec.name / str(setting) / _file_name(image, codec.suffix)
                atomic_write(path, lambda tmp: tmp.write_bytes(data), force=True)
            records.append(_record(codec.name, setting, image, len(data), rgb, encode_s, decode_s))
    return records


def average(records: Sequence[dict]) -> list[dict]:
    """One row per (codec, setting): per-image metrics averaged (MS-SSIM dB from the mean MS-SSIM)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["codec"], r["setting"]), []).append(r)
    rows = []
    for (codec, setting), rs in groups.items():
        row = {"codec": codec, "setting": setting, "images": len(rs)}
        row.update({k: float(np.mean([r[k] for r in rs])) for k in AVERAGED})
        row["ms_ssim_db"] = metrics.ms_ssim_db(row["ms_ssim"])
        row["exact"] = sum(bool(r["exact"]) for r in rs)
        row["max_abs_error"] = max(r["max_abs_error"] for r in rs)
        if rs[0].get("block_budget") is not None:
            row.update(
                block_bytes_max=max(r["block_bytes_max"] for r in rs),
                block_bytes_mean=float(np.mean([r["block_bytes_mean"] for r in rs])),
                block_budget=rs[0]["block_budget"],
            )
        rows.append(row)
    return rows


def curves_from(rows: Sequence[dict]) -> dict[str, dict]:
    """Averaged rows to one curve per codec, sorted by rate."""
    curves: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: r["bpp"]):
        c = curves.setdefault(row["codec"], {k: [] for k in ("setting", "bpp", "psnr", "ms_ssim", "encode_s", "decode_s")})
        for k in c:
            c[k].append(row[k])
    return curves


def compressai_json(name: str, curve: dict, description: str) -> dict:
    """A curve in CompressAI's results-JSON format (what ``reference=`` reads back)."""
    return {
        "name": name,
        "description": description,
        "results": {
            "psnr-rgb": curve["psnr"],
            "ms-ssim-rgb": curve["ms_ssim"],
            "bpp": curve["bpp"],
            **({"encoding_time": curve["encode_s"], "decoding_time": curve["decode_s"]} if "encode_s" in curve else {}),
        },
    }


def load_reference(paths: Sequence[str | Path]) -> dict[str, dict]:
    """Published curves in CompressAI's results-JSON format, from files or folders of ``*.json``."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(p.glob("*.json"))
            if not found:
                raise DataError(f"{p}: no reference .json files in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such reference file or folder")
    curves = {}
    for f in files:
        try:
            doc = json.loads(f.read_text())
            res = doc["results"]
            bpp = [float(v) for v in res["bpp"]]
            psnr = [float(v) for v in res["psnr-rgb"]] if "psnr-rgb" in res else []
            msssim = [float(v) for v in res["ms-ssim-rgb"]] if "ms-ssim-rgb" in res else []
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{f}: not a CompressAI results JSON ({type(e).__name__}: {e})") from None
        if not bpp or (len(psnr) != len(bpp) and len(msssim) != len(bpp)):
            raise DataError(f"{f}: its bpp and psnr-rgb / ms-ssim-rgb lists differ in length")
        name = str(doc.get("name") or f.stem)
        curves[f"ref:{name}"] = {
            "bpp": bpp,
            "psnr": psnr if len(psnr) == len(bpp) else [],
            "ms_ssim": msssim if len(msssim) == len(bpp) else [],
        }
    return curves


def bd_rates(learned: dict[str, dict], others: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """BD-rate (%) of every learned curve against every other curve, on PSNR and on MS-SSIM (dB)."""
    out: dict[str, dict[str, dict]] = {}
    for lname, lc in learned.items():
        for oname, oc in others.items():
            entry = {}
            if lc["psnr"] and oc.get("psnr"):
                entry["psnr"] = metrics.bd_rate(oc["bpp"], oc["psnr"], lc["bpp"], lc["psnr"])
            if lc["ms_ssim"] and oc.get("ms_ssim"):
                entry["ms_ssim_db"] = metrics.bd_rate(
                    oc["bpp"],
                    [metrics.ms_ssim_db(v) for v in oc["ms_ssim"]],
                    lc["bpp"],
                    [metrics.ms_ssim_db(v) for v in lc["ms_ssim"]],
                )
            out.setdefault(lname, {})[oname] = entry
    return out


def points_against_curves(points: dict[str, dict], curves: dict[str, dict]) -> list[dict]:
    """A one-point learned curve against every other curve at the same bpp: the curve's PSNR there
    (linear in log bpp between its two neighbouring points), and ours minus it. Outside a curve's
    bpp range: no entry."""
    out = []
    for name, p in points.items():
        bpp, psnr = p["bpp"][0], p["psnr"][0]
        for other, c in curves.items():
            pairs = sorted(zip(c["bpp"], c.get("psnr") or []))
            if len(pairs) < 2 or not pairs[0][0] <= bpp <= pairs[-1][0]:
                continue
            there = float(np.interp(math.log(bpp), [math.log(b) for b, _ in pairs], [v for _, v in pairs]))
            out.append({"learned": name, "against": other, "bpp": bpp, "psnr": psnr, "their_psnr": there, "delta_db": psnr - there})
    return out


def nearest_points(learned_rows: Sequence[dict], rows: Sequence[dict], codecs: Sequence[str]) -> list[dict]:
    """For each learned point, the named codecs' averaged points nearest in bpp."""
    out = []
    for lr in learned_rows:
        entry = {"learned": lr, "nearest": {}}
        for name in codecs:
            candidates = [r for r in rows if r["codec"] == name]
            if candidates:
                entry["nearest"][name] = min(candidates, key=lambda r: abs(r["bpp"] - lr["bpp"]))
        out.append(entry)
    return out


def plot_rd(curves: dict[str, dict], learned: Sequence[str], path: Path, title: str) -> None:
    """PSNR-bpp and MS-SSIM(dB)-bpp side by side; learned curves bold, references dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    # lossless points (PNG: PSNR capped at 100 dB, far right) would flatten every lossy curve
    curves = {n: c for n, c in curves.items() if not (c.get("psnr") and min(c["psnr"]) >= metrics.PSNR_CAP - 1e-6)}
    for name, c in curves.items():
        style = (
            {"linewidth": 2.5, "marker": "o"}
            if name in learned
            else ({"linestyle": "--", "linewidth": 1.2} if name.startswith("ref:") else {"linewidth": 1.2, "marker": "."})
        )
        if len(c["bpp"]) == 1:
            style = {"marker": "*", "markersize": 12, "linestyle": "none"}
        if c.get("psnr"):
            axes[0].plot(c["bpp"], c["psnr"], label=name, **style)
        if c.get("ms_ssim"):
            axes[1].plot(c["bpp"], [metrics.ms_ssim_db(v) for v in c["ms_ssim"]], label=name, **style)
    max_bpp = max((b for n, c in curves.items() if len(c["bpp"]) > 1 for b in c["bpp"]), default=2.0)
    for ax, ylabel in zip(axes, ("PSNR RGB (dB)", "MS-SSIM RGB (dB)")):
        ax.set_xlabel("bits per pixel (file size)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, min(max_bpp, 3.0) * 1.05)
        ax.grid(True, alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as a PNG written atomically (then closed)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()), force=True)


def write_csv(records: Sequence[dict], rows: Sequence[dict], path: Path) -> None:
    """Per-image records, then one ``image=mean`` row per (codec, setting)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RECORD_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    writer.writerows({**r, "image": "mean", "height": "", "width": "", "bytes": ""} for r in rows)
    atomic_write(path, lambda tmp: tmp.write_text(buf.getvalue()), force=True)


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(type(value).__name__)


@dataclass
class LearnedModel:
    """One point of a learned curve: a checkpoint or export bundle and its label."""

    path: Path
    setting: str  # how the point is named (by default the file's name)
    curve: str | None = None  # the curve it belongs to (default: compressml-<architecture>)
    refine: int = 0  # LAE: steps of encoder-side latent refinement (its curve gets a "+refine<steps>" suffix)
    qualities: tuple[float, ...] | None = None  # a variable-rate LAE: its points (None: VR_QUALITIES)
    max_errors: tuple[int, ...] | None = None  # an MLLAE in lossless mode: one point per near-lossless bound D


VR_QUALITIES = (0.0, 25.0, 50.0, 75.0, 100.0)  # a variable-rate checkpoint's default curve


def parse_max_errors(value) -> tuple[int, ...] | None:
    """``max_error=[0, 1, 2, 4]`` (or one number) -> the near-lossless bounds an MLLAE is evaluated at."""
    from compressml.codec.mllae import MAX_ERROR_LIMIT

    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_ERROR_LIMIT for v in values):
        raise ConfigError(f"max_error must be whole numbers from 0 to {MAX_ERROR_LIMIT} (one or a list), got {value!r}")
    return tuple(dict.fromkeys(values))


def parse_qualities(value) -> tuple[float, ...] | None:
    """``qualities=[0, 50, 100]`` (or one number) -> the qualities a variable-rate model is evaluated at."""
    if value is None:
        return None
    values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if (
        not isinstance(values, (list, tuple))
        or not values
        or any(isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 100 for q in values)
    ):
        raise ConfigError(f"qualities must be numbers from 0 to 100 (or a list of them), got {value!r}")
    return tuple(sorted({float(q) for q in values}))


def default_curve_name(net: torch.nn.Module) -> str:
    return family_of(net).curve_name(net)


def sweep_models(sweep_dirs, curve: str | None) -> list[LearnedModel]:
    """``evaluate.py sweep=DIR`` (or a list of DIRs): one :class:`~compressml.evaluation.LearnedModel`
    per job with a checkpoint, named by the job's distinguishing overrides."""
    from compressml.sweep_jobs import sweep_jobs

    dirs = [sweep_dirs] if isinstance(sweep_dirs, (str, Path)) else list(sweep_dirs or [])
    models = []
    for d in dirs:
        models += jobs_as_models(sweep_jobs(d), curve, prefix=f"{Path(d).name}:" if len(dirs) > 1 else "")
    return models


def jobs_as_models(jobs: list, curve: str | None, prefix: str = "") -> list[LearnedModel]:
    """The jobs that left a checkpoint as points of a learned curve (the others are named and left out)."""
    for j in jobs:
        if j.checkpoint is None:
            print(f"sweep: job {j.number} ({j.label}) has no checkpoint; left out", flush=True)
        elif not j.summary:
            print(f"sweep: job {j.number} ({j.label}) did not finish; its latest checkpoint is used", flush=True)
    usable = [j for j in jobs if j.checkpoint is not None]
    if not usable:
        raise DataError(f"sweep: no job of {jobs[0].directory.parent} left a checkpoint")
    return [LearnedModel(j.checkpoint, f"{prefix}{j.label}", curve) for j in usable]


def run_evaluation(
    models: Sequence[LearnedModel],
    images: Sequence[EvalImage],
    codecs: Sequence[ClassicalCodec],
    out_dir: Path,
    settings: dict[str, Sequence[int]] | None = None,
    reference: Sequence[str | Path] = (),
    compare: Sequence[str] = ("jpeg-420", "webp"),
    matched: Sequence[ClassicalCodec] = (),
    keep_classical_files: bool = False,
    load_model: Callable[[Path], CodecModel] = CodecModel.load,
    progress: Callable[[str], None] = lambda msg: None,
    loaded: Sequence[tuple[str, str, object]] = (),
    report_images: int = 3,
) -> dict:
    """Measure everything, write results.json / results.csv / rd.png / curves/*.json and report.html
    (with crops of the first ``report_images`` images) into ``out_dir``.

    ``loaded`` adds codecs that are already built, as ``(curve, setting, codec)`` with the
    ``encode``/``decode`` of :class:`CodecModel` (the hybrid codecs); they count as learned curves."""
    if not images:
        raise DataError("no images to evaluate")
    references = load_reference(reference) if reference else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = dict(settings or {})
    records: list[dict] = []
    learned_names: list[str] = []
    decoded: dict = {}
    points = [(curve, setting, model) for _, model, curve, setting in _learned_points(models, load_model)]
    for curve, setting, model in [*points, *loaded]:
        progress(f"{curve} [{setting}]: {len(images)} image(s)")
        records += evaluate_learned(model, curve, setting, images, out_dir / "files" / curve / setting, decoded, report_images)
        learned_names += [curve] if curve not in learned_names else []
    for codec in codecs:
        chosen = tuple(settings.get(codec.name) or codec.settings)
        progress(f"{codec.name}: {len(chosen)} setting(s) x {len(images)} image(s)")
        records += evaluate_classical(codec, chosen, images, out_dir / "files" if keep_classical_files else None)
    rows = average(records)
    curves = curves_from(rows)
    lossy_others = {n: c for n, c in curves.items() if n not in learned_names and len(c["bpp"]) > 1}
    result = {
        "images": [{"name": i.name, "height": i.rgb.shape[0], "width": i.rgb.shape[1]} for i in images],
        "models": [{"path": str(m.path), "setting": m.setting} for m in models] + [{"codec": c, "setting": st} for c, st, _ in loaded],
        "learned": learned_names,
        "records": records,
        "averages": rows,
        "curves": curves,
        "reference": references,
        "bd_rate": bd_rates({n: curves[n] for n in learned_names}, {**lossy_others, **references}),
        "nearest": nearest_points([r for r in rows if r["codec"] in learned_names], rows, compare),
        "matched": matched_comparison(records, learned_names, matched, images),
        "at_equal_bpp": points_against_curves(
            {n: curves[n] for n in learned_names if len(curves[n]["bpp"]) == 1}, {**lossy_others, **references}
        ),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    text = json.dumps(result, indent=1, default=_json_default)
    atomic_write(out_dir / "results.json", lambda tmp: tmp.write_text(text), force=True)
    write_csv(records, rows, out_dir / "results.csv")
    for name, curve in curves.items():
        doc = compressai_json(name, curve, f"compressml evaluate on {len(images)} image(s)")
        atomic_write(out_dir / "curves" / f"{name}.json", lambda tmp, d=doc: tmp.write_text(json.dumps(d, indent=1)), force=True)
    plot_rd({**curves, **references}, learned_names, out_dir / "rd.png", f"{len(images)} image(s)")
    from compressml.report import write_report

    write_report(result, out_dir, images[:report_images], decoded, codecs)
    return result


def _learned_points(models: Sequence[LearnedModel], load_model: Callable[[Path], CodecModel]):
    """(entry, codec model, curve, setting) for every point: a fixed-rate checkpoint is one point of
    its curve; a variable-rate one is a whole curve of its own (``<curve>-vr``, one point per quality)."""
    loaded: dict[Path, CodecModel] = {}
    for m in models:
        if m.path not in loaded:
            loaded[m.path] = load_model(m.path)
    variable = [m for m in models if loaded[m.path].variable_rate]
    if any(m.qualities for m in models) and not variable:
        raise ConfigError("qualities is for variable-rate LAE checkpoints (model.variable_rate=true); these code at one rate each")
    several = len({m.path for m in variable}) > 1
    for m in models:
        model = loaded[m.path]
        curve = m.curve or default_curve_name(model.net)
        if model.variable_rate:
            curve = (f"{curve}:{m.setting}" if several else curve) if m.curve else (f"{curve}-vr:{m.setting}" if several else f"{curve}-vr")
        if m.max_errors is not None:
            if not model.lossless:
                raise ConfigError(f"max_error is for MLLAE models in lossless mode; {m.path} is not one")
            for d in m.max_errors:
                yield m, model.near_lossless(d), curve, f"D{d}"
            continue
        if m.refine:
            model, curve = model.refined(m.refine), f"{curve}+refine{m.refine}"
        if not model.variable_rate:
            yield m, model, curve, m.setting
            continue
        for q in m.qualities or VR_QUALITIES:
            yield m, model.at(q), curve, f"q{q:g}"


def learned_models(checkpoints, label: str | None) -> list[LearnedModel]:
    """``checkpoint=PATH`` or a list of paths (one curve); points are named by file, made unique."""
    if checkpoints is None:
        return []
    paths = [Path(p) for p in ([checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints))]
    for p in paths:
        if not p.exists():
            raise DataError(f"{p}: no such checkpoint or bundle")
    names = [p.stem if p.is_file() else p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{i}-{n}" for i, n in enumerate(names)]
    return [LearnedModel(p, n, label) for p, n in zip(paths, names)]


def with_refinement(models: list[LearnedModel], refine) -> list[LearnedModel]:
    """Each model once per entry of ``refine`` (steps of LAE latent refinement, a number or a list;
    0 = none): one curve per entry, the refined ones named ``<curve>+refine<steps>``."""
    steps = [refine] if isinstance(refine, int) and not isinstance(refine, bool) else refine
    if not isinstance(steps, (list, tuple)) or not steps or any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in steps):
        raise ConfigError(f"refine must be a number of steps >= 0 or a list of them, got {refine!r}")
    return [replace(m, refine=n) for m in models for n in steps]  # a model's entries together: loaded once


def evaluation_images(datamodule, max_images: int | None = None) -> list[EvalImage]:
    """The data module's held-out images (all of them for evaluation-only sets) as 8-bit RGB."""
    datamodule.setup("test")
    items = datamodule.evaluation_items
    if max_images is not None:
        items = items[:max_images]
    return [EvalImage.from_tensor(item.name, item.load()) for item in items]


def config_images(cfg) -> list[EvalImage]:
    """``images=FOLDER`` (every image in it) when given, else the ``data`` group's held-out images."""
    from compressml.data.images import list_images, load_image
    from compressml.training import instantiate

    folder = cfg.get("images")
    if not folder:
        return evaluation_images(instantiate(cfg.data, "data"), cfg.get("max_images"))
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"images: no such folder: {folder}")
    paths = list_images(folder)[: cfg.get("max_images")]
    if not paths:
        raise DataError(f"images: no images in {folder}")
    return [EvalImage.from_tensor(p.relative_to(folder).as_posix(), load_image(p)) for p in paths]


def hybrid_codecs(specs) -> list[tuple[str, str, object]]:
    """``hybrid=[{red: PATH, base: jpeg-420, settings: [50, 75]}, {red: PATH, base: [lae1.ckpt, ...]}]``
    -> one ``(curve, setting, HybridCodec)`` per point: a classical base gives one point per quality,
    an LAE base one point per LAE model."""
    from compressml.codec.hybrid import BASE_FORMATS, HybridCodec
    from compressml.codec.upscale import Upscaler
    from compressml.errors import ConfigError

    points = []
    for spec in [specs] if isinstance(specs, dict) else specs:
        if not isinstance(spec, dict) or not spec.get("red") or not spec.get("base"):
            raise ConfigError("each hybrid entry needs red: RED_MODEL and base: a classical codec or LAE model(s)")
        unknown = set(spec) - {"red", "base", "settings", "label"}
        if unknown:
            raise ConfigError(f"hybrid entry: unknown key(s) {sorted(unknown)} (red, base, settings, label)")
        red = Upscaler.load(spec["red"])
        base = spec["base"]
        if isinstance(base, str) and base in BASE_FORMATS:
            curve = spec.get("label") or f"hybrid-{base}+red-x{red.scale}"
            settings = spec.get("settings") or (25, 50, 75, 90)
            if not isinstance(settings, (list, tuple)) or not all(isinstance(q, int) for q in settings):
                raise ConfigError(f"hybrid entry: settings must be a list of qualities, e.g. [50, 75], got {settings!r}")
            points += [(curve, str(q), HybridCodec(red, base, q)) for q in settings]
            continue
        if spec.get("settings"):
            raise ConfigError("hybrid entry: settings are for a classical base; an LAE base gives one point per model")
        curve = spec.get("label") or f"hybrid-lae+red-x{red.scale}"
        for m in learned_models(base, None):
            points.append((curve, m.setting, HybridCodec(red, "lae", lae=CodecModel.load(m.path))))
    curves = [c for c in dict.fromkeys(p[0] for p in points)]
    entries = [s.get("label") for s in ([specs] if isinstance(specs, dict) else specs)]
    if len(curves) < len(entries):
        raise ConfigError("two hybrid entries would draw the same curve (same base and scale): give each a label")
    return points


def evaluate_sr_from_config(cfg, models: list[LearnedModel]) -> dict:
    """evaluate.py with RED checkpoints: every model against bicubic on the configured images."""
    from compressml.codec.upscale import Upscaler
    from compressml.errors import ConfigError
    from compressml.sr_evaluation import evaluate_sr

    upscalers = [(m.setting, Upscaler.load(m.path)) for m in models]
    scales = {u.scale for _, u in upscalers}
    if len(scales) > 1:
        raise ConfigError(f"the RED checkpoints have different scales ({sorted(scales)}): evaluate one scale at a time")
    if cfg.get("label") and len(upscalers) == 1:
        upscalers = [(cfg.label, upscalers[0][1])]
    images = [(im.name, _as_tensor(im.rgb)[0]) for im in config_images(cfg)]
    out_dir = Path(cfg.paths.output_dir)
    tile = cfg.get("tile")
    result = evaluate_sr(
        [(label, lambda lr, u=u: u(lr, tile)) for label, u in upscalers],
        images,
        scales.pop(),
        out_dir,
        progress=lambda name: print(f"evaluating {name}", flush=True),
    )
    result["output_dir"] = str(out_dir)
    return result


def evaluate_from_config(cfg) -> dict:
    """What ``evaluate.py`` does with its composed config (conf/evaluate.yaml)."""
    from compressml.baselines import available_codecs
    from compressml.errors import ConfigError
    from compressml.systems.lae import plain
    from compressml.systems.loading import model_family

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if cfg.get("max_images") is not None and int(cfg.max_images) < 1:
        raise ConfigError(f"max_images must be >= 1, got {cfg.max_images}")
    models = learned_models(plain(cfg.checkpoint), cfg.get("label"))
    if cfg.get("sweep"):
        models += sweep_models(plain(cfg.sweep), cfg.get("label"))
    hybrids = hybrid_codecs(plain(cfg.get("hybrid")) or [])
    families = {model_family(m.path) for m in models}
    qualities = parse_qualities(plain(cfg.get("qualities")))
    if qualities:
        models = [replace(m, qualities=qualities) for m in models]
    max_errors = parse_max_errors(plain(cfg.get("max_error")))
    if max_errors is not None:
        if families - {"mllae"}:
            raise ConfigError(f"max_error is for MLLAE models in lossless mode; these are {', '.join(sorted(families - {'mllae'}))}")
        models = [replace(m, max_errors=max_errors) for m in models]
    refine = plain(cfg.get("refine"))
    if refine:
        if families - {"lae"}:
            raise ConfigError(f"refine is for LAE checkpoints; these are {', '.join(sorted(families - {'lae'}))}")
        models = with_refinement(models, refine)
    if "red" in families:
        if families != {"red"} or hybrids:
            raise ConfigError(
                "RED (super-resolution) checkpoints are evaluated on their own, against bicubic; "
                "give only RED checkpoints (for RED as a codec's decoder use hybrid= without them)"
            )
        return evaluate_sr_from_config(cfg, models)
    note = lambda msg: print(msg, file=sys.stderr, flush=True)
    codecs = available_codecs(list(cfg.codecs or []), note=note)
    if not models and not codecs and not hybrids:
        raise ConfigError("nothing to evaluate: give checkpoint=PATH, sweep=DIR, hybrid=[...] and/or codecs=[...]")
    settings = {k: list(v) for k, v in (plain(cfg.get("settings")) or {}).items() if v is not None}
    if max_errors is not None and "jpeg-ls" in {c.name for c in codecs}:
        settings.setdefault("jpeg-ls", list(max_errors))  # JPEG-LS at the same bounds D
    unknown = [k for k in settings if k not in {c.name for c in codecs}]
    if unknown:
        raise ConfigError(f"settings given for codec(s) not evaluated: {unknown}")
    reference = plain(cfg.get("reference")) or []
    reference = [reference] if isinstance(reference, str) else list(reference)
    images = config_images(cfg)
    out_dir = Path(cfg.paths.output_dir)
    result = run_evaluation(
        models,
        images,
        codecs,
        out_dir,
        settings=settings,
        reference=reference,
        compare=list(cfg.compare or []),
        matched=available_codecs(list(cfg.get("matched") or []), note=note),
        keep_classical_files=bool(cfg.keep_classical_files),
        report_images=int(cfg.get("report_images", 3)),
        progress=lambda msg: print(f"evaluating {msg}", flush=True),
        loaded=hybrids,
    )
    result["output_dir"] = str(out_dir)
    return result


def print_report(result: dict) -> None:
    """Averages per setting, learned points beside the nearest classical ones, BD-rates (or, for
    RED checkpoints, the super-resolution table)."""
    from rich.console import Console
    from rich.table import Table

    if "scale" in result:
        from compressml.sr_evaluation import print_sr_report

        return print_sr_report(result)

    console = Console(width=max(Console().width, 110))
    table = Table(title=f"Average over {len(result['images'])} image(s) (bpp from file sizes)", header_style="bold")
    for col in ("codec", "setting", "bpp", "PSNR dB", "MS-SSIM", "MS-SSIM dB", "enc s", "dec s"):
        table.add_column(col, justify="left" if col in ("codec", "setting") else "right")
    learned = set(result["learned"])
    for r in sorted(result["averages"], key=lambda r: (r["codec"] not in learned, r["codec"], r["bpp"])):
        table.add_row(
            r["codec"],
            str(r["setting"]),
            f"{r['bpp']:.3f}",
            f"{r['psnr']:.2f}",
            f"{r['ms_ssim']:.4f}",
            f"{r['ms_ssim_db']:.2f}",
            f"{r['encode_s']:.3f}",
            f"{r['decode_s']:.3f}",
        )
    console.print(table)
    if result["nearest"]:
        near = Table(title="Learned points beside the classical codecs' nearest-bpp points", header_style="bold")
        for col in ("codec", "setting", "bpp", "PSNR dB", "MS-SSIM dB"):
            near.add_column(col, justify="left" if col in ("codec", "setting") else "right")
        for entry in result["nearest"]:
            lr = entry["learned"]
            near.add_row(lr["codec"], str(lr["setting"]), f"{lr['bpp']:.3f}", f"{lr['psnr']:.2f}", f"{lr['ms_ssim_db']:.2f}", style="bold")
            for name, r in entry["nearest"].items():
                near.add_row(f"  {name}", str(r["setting"]), f"{r['bpp']:.3f}", f"{r['psnr']:.2f}", f"{r['ms_ssim_db']:.2f}")
        console.print(near)
    _print_matched(console, result)
    _print_learned_details(console, result)
    rows = [(ln, on, e) for ln, against in result["bd_rate"].items() for on, e in against.items()]
    single = [n for n in result["learned"] if len(result["curves"][n]["bpp"]) < 2]
    if single:
        console.print(f"BD-rate needs a curve: {', '.join(single)} has one point (give several checkpoints, e.g. one per lambda)")
    rows = [r for r in rows if r[0] not in single]
    if result.get("at_equal_bpp"):
        eq = Table(
            title="One-point curves against the other curves at the same bpp (their PSNR interpolated in log bpp)", header_style="bold"
        )
        for col in ("learned", "against", "bpp", "ours dB", "theirs dB", "difference"):
            eq.add_column(col, justify="left" if col in ("learned", "against") else "right")
        for e in result["at_equal_bpp"]:
            eq.add_row(
                e["learned"], e["against"], f"{e['bpp']:.3f}", f"{e['psnr']:.2f}", f"{e['their_psnr']:.2f}", f"{e['delta_db']:+.2f} dB"
            )
        console.print(eq)
    if rows:
        bd = Table(title="BD-rate of the learned curve (negative: fewer bits for the same quality)", header_style="bold")
        for col in ("learned", "against", "BD-rate PSNR", "BD-rate MS-SSIM"):
            bd.add_column(col, justify="left" if col in ("learned", "against") else "right")
        fmt = lambda v: "n/a" if v is None else f"{v:+.1f} %"
        for ln, on, e in rows:
            bd.add_row(ln, on, fmt(e.get("psnr")), fmt(e.get("ms_ssim_db")))
        console.print(bd)
    console.print(f"results: {result['output_dir']}/results.json, results.csv, rd.png, curves/")


def _print_matched(console, result: dict) -> None:
    from rich.table import Table

    if not result.get("matched"):
        return
    table = Table(title="At the same file size (each image: the best quality no larger than ours)", header_style="bold")
    for col in ("codec", "setting", "bpp", "PSNR dB", "MS-SSIM"):
        table.add_column(col, justify="left" if col in ("codec", "setting") else "right")
    for row in result["matched"]:
        o = row["ours"]
        table.add_row(row["learned"], str(row["setting"]), f"{o['bpp']:.3f}", f"{o['psnr']:.2f}", f"{o['ms_ssim']:.4f}", style="bold")
        for name, m in row.items():
            if name in ("learned", "setting", "ours"):
                continue
            if m is None:
                table.add_row(f"  {name}", "-", "cannot be that small", "", "")
            else:
                table.add_row(f"  {name}", "per image", f"{m['bpp']:.3f}", f"{m['psnr']:.2f}", f"{m['ms_ssim']:.4f}")
    console.print(table)


def _print_learned_details(console, result: dict) -> None:
    """MLLAE-N block payloads, and bits per sub-pixel beside the lossless codecs when ours is exact."""
    from rich.table import Table

    learned = [r for r in result["averages"] if r["codec"] in result["learned"]]
    blocks = [r for r in learned if r.get("block_budget") is not None]
    if blocks:
        table = Table(title="Bytes per block (never above N)", header_style="bold")
        for col in ("codec", "setting", "N", "max", "mean"):
            table.add_column(col, justify="left" if col in ("codec", "setting") else "right")
        for r in blocks:
            table.add_row(r["codec"], str(r["setting"]), str(r["block_budget"]), str(r["block_bytes_max"]), f"{r['block_bytes_mean']:.1f}")
        console.print(table)
    exact = [r for r in learned if r["exact"] == r["images"]]
    if exact:
        lossless = [r for r in result["averages"] if r["codec"] not in result["learned"] and r["exact"] == r["images"]]
        table = Table(title="Lossless: bits per sub-pixel (every image verified bit-exact)", header_style="bold")
        for col in ("codec", "bpsp", "exact images"):
            table.add_column(col, justify="left" if col == "codec" else "right")
        for r in exact + lossless:
            table.add_row(r["codec"], f"{r['bpsp']:.3f}", f"{r['exact']}/{r['images']}")
        console.print(table)
    near = [r for r in learned if re.fullmatch(r"D\d+", str(r["setting"]))]
    if near:
        near += [r for r in result["averages"] if r["codec"] == "jpeg-ls"]
        table = Table(title="Near-lossless: bits per sub-pixel at each bound D (every sample within ±D)", header_style="bold")
        for col in ("codec", "D", "bpsp", "max error", "PSNR dB"):
            table.add_column(col, justify="left" if col == "codec" else "right")
        bound = lambda r: int(str(r["setting"]).lstrip("D"))
        for r in sorted(near, key=lambda r: (bound(r), r["codec"] == "jpeg-ls")):
            psnr = "lossless" if r["exact"] == r["images"] else f"{r['psnr']:.2f}"
            table.add_row(r["codec"], str(bound(r)), f"{r['bpsp']:.3f}", str(r["max_abs_error"]), psnr)
        console.print(table)
