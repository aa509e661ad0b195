"""Sweeps: the jobs of a Hydra multirun (``train.py -m ...``, ``hparams_search=...``) gathered
into one learned RD curve, and the report a sweep ends with.

Each training job writes ``summary.json`` into its folder (:data:`compressml.training.SUMMARY_FILE`):
its best validation metrics, checkpoints and overrides. :func:`sweep_jobs` reads those folders;
``evaluate.py sweep=DIR`` turns every job's best checkpoint into a point of one curve (per
architecture) against JPEG and WebP; :class:`SweepReport`, a Hydra callback
(``conf/hydra/default.yaml``), writes the table and plot when the sweep ends and logs them to W&B
in the sweep's group.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from compressml.sweep_jobs import SweepJob, distinguishing_labels, sweep_jobs  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

REPORT_JSON = "sweep_report.json"
REPORT_CSV = "sweep_report.csv"
REPORT_PLOT = "sweep_rd.png"
EVALUATION_DIR = "evaluate"


# -- the report a sweep ends with --------------------------------------------------------------
TABLE_COLUMNS = ("job", "label", "bpp", "psnr", "ms_ssim", "objective", "steps", "seconds", "checkpoint")


def _first(best: dict, *keys: str) -> float | None:
    for key in keys:
        value = best.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


def validation_table(jobs: list[SweepJob]) -> list[dict[str, Any]]:
    """One row per job from its best validation: bpp and PSNR of real files where the family codes
    them during validation (``val/bpp_real``), else the estimates; MS-SSIM; the objective."""
    rows = []
    for j in jobs:
        best = j.summary.get("best") or {}
        rows.append(
            {
                "job": j.number,
                "label": j.label,
                "bpp": _first(best, "val/bpp_real", "val/bpp", "val/bpp_code", "val/bpsp_real"),
                "psnr": _first(best, "val/psnr_real", "val/psnr", "val/psnr_y"),
                "ms_ssim": _first(best, "val/ms_ssim"),
                "objective": j.summary.get("objective"),
                "steps": j.summary.get("global_step"),
                "seconds": j.summary.get("seconds"),
                "checkpoint": str(j.checkpoint) if j.checkpoint else None,
            }
        )
    return rows


def _plot_validation(rows: list[dict], path: Path, title: str) -> None:
    """PSNR against bpp of the jobs' best validations, each point labelled by its job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compressml.evaluation import save_figure

    points = sorted((r for r in rows if r["bpp"] is not None and r["psnr"] is not None), key=lambda r: r["bpp"])
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot([r["bpp"] for r in points], [r["psnr"] for r in points], marker="o", linewidth=2)
    for r in points:
        ax.annotate(r["label"], (r["bpp"], r["psnr"]), fontsize=7, xytext=(4, -10), textcoords="offset points")
    ax.set_xlabel("bits per pixel (validation)")
    ax.set_ylabel("PSNR (dB, validation)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    save_figure(fig, path)


def _write_csv(rows: list[dict], path: Path) -> None:
    import csv
    import io

    from compressml.codec.files import atomic_write

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda tmp: tmp.write_text(buf.getvalue()), force=True)


def sweep_report(
    sweep_dir: str | Path,
    data=None,
    evaluate: bool = True,
    codecs=("jpeg-420", "webp"),
    max_images: int | None = None,
    label: str | None = None,
) -> dict:
    """The report of a finished sweep, written into its folder: ``sweep_report.json/.csv`` and
    ``sweep_rd.png`` (every job's best validation), and with ``evaluate`` (LAE/MLLAE sweeps, a
    ``data`` config to take the held-out images from) the real-file evaluation of every job's
    checkpoint against ``codecs`` in ``evaluate/`` (rd.png, results.json with BD-rates)."""
    from compressml.codec.files import atomic_write

    root = Path(sweep_dir)
    jobs = sweep_jobs(root)
    rows = validation_table(jobs)
    report: dict[str, Any] = {"sweep_dir": str(root), "jobs": len(jobs), "table": rows, "plot": str(root / REPORT_PLOT)}
    _write_csv(rows, root / REPORT_CSV)
    _plot_validation(rows, root / REPORT_PLOT, f"{root.name}: best validation of each job")
    if evaluate and data is not None:
        report["evaluation"] = _evaluate_sweep(root, jobs, data, list(codecs), max_images, label)
    text = json.dumps(report, indent=1, default=str)
    atomic_write(root / REPORT_JSON, lambda tmp: tmp.write_text(text), force=True)
    return report


def _evaluate_sweep(root: Path, jobs: list[SweepJob], data, codecs: list[str], max_images: int | None, label: str | None) -> dict | None:
    """Every job's checkpoint through real files on ``data``'s held-out images, against ``codecs``."""
    from compressml.baselines import available_codecs
    from compressml.evaluation import evaluation_images, jobs_as_models, run_evaluation
    from compressml.systems.loading import model_family
    from compressml.training import instantiate

    models = jobs_as_models(jobs, label)
    families = {model_family(m.path) for m in models}
    if not families <= {"lae", "mllae"}:
        log.info("sweep report: %s models are not evaluated as codecs", ", ".join(sorted(families)))
        return None
    images = evaluation_images(instantiate(data, "data"), max_images)
    out = root / EVALUATION_DIR
    result = run_evaluation(
        models,
        images,
        available_codecs(codecs),
        out,
        compare=codecs,
        matched=(),
        progress=lambda msg: print(f"sweep report: evaluating {msg}", flush=True),
    )
    return {
        "output_dir": str(out),
        "plot": str(out / "rd.png"),
        "learned": result["learned"],
        "averages": [r for r in result["averages"] if r["codec"] in result["learned"]],
        "bd_rate": result["bd_rate"],
    }


def log_report_to_wandb(report: dict, wandb_cfg: dict, group: str) -> str | None:
    """One W&B run in the sweep's group (job type ``sweep-report``) holding the table, the plots and
    the BD-rates; returns its folder."""
    import os

    import wandb

    offline = wandb_cfg.get("offline")
    if offline is None:
        offline = not os.environ.get("WANDB_API_KEY")
    run = wandb.init(
        project=wandb_cfg.get("project") or "compressml",
        entity=wandb_cfg.get("entity"),
        group=group,
        job_type="sweep-report",
        name=f"{group}-report",
        dir=report["sweep_dir"],
        mode="offline" if offline else "online",
        config={"sweep_dir": report["sweep_dir"], "jobs": report["jobs"]},
    )
    try:
        rows = report["table"]
        logged = {
            "sweep/rd_table": wandb.Table(columns=list(TABLE_COLUMNS), data=[[r[c] for c in TABLE_COLUMNS] for r in rows]),
            "sweep/rd_plot": wandb.Image(report["plot"]),
        }
        evaluation = report.get("evaluation")
        if evaluation:
            logged["sweep/rd_plot_real_files"] = wandb.Image(evaluation["plot"])
            bd = [
                [ln, on, e.get("psnr"), e.get("ms_ssim_db")] for ln, against in evaluation["bd_rate"].items() for on, e in against.items()
            ]
            logged["sweep/bd_rate"] = wandb.Table(columns=["learned", "against", "bd_rate_psnr", "bd_rate_ms_ssim"], data=bd)
            for ln, on, psnr, _ in bd:
                run.summary[f"bd_rate_psnr/{ln}/vs/{on}"] = psnr
        run.log(logged)
        return os.path.dirname(run.dir)
    finally:
        run.finish()


class SweepReport(Callback):
    """Hydra callback (``hydra.callbacks.sweep_report``): when a multirun ends, write its report
    (:func:`sweep_report`) and log it to W&B in the sweep's group when the sweep logs to W&B.
    A report that cannot be made is a warning: the jobs' results stay as they are."""

    def __init__(self, evaluate: bool = True, codecs=("jpeg-420", "webp"), max_images: int | None = None, wandb: bool = True):
        self.evaluate = evaluate
        self.codecs = list(codecs)
        self.max_images = max_images
        self.wandb = wandb

    def on_multirun_end(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        from compressml.loggers import sweep_group
        from compressml.training import SUMMARY_FILE

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir() or not any((d / SUMMARY_FILE).is_file() for d in sweep_dir.iterdir() if d.is_dir()):
            return  # not a training sweep (e.g. evaluate.py -m), or no job finished
        try:
            report = sweep_report(sweep_dir, config.get("data"), self.evaluate, self.codecs, self.max_images)
            if self.wandb and OmegaConf.select(config, "logger.wandb") is not None:
                wandb_cfg = {k: _select(config, f"logger.wandb.{k}") for k in ("project", "offline", "group", "entity")}
                group = wandb_cfg.get("group") or sweep_group(sweep_dir, config.hydra.job.name)
                log_report_to_wandb(report, wandb_cfg, group)
        except Exception as e:  # the jobs' results stand whatever happens here
            log.warning(
                "sweep report not made (%s: %s); make it later with: python evaluate.py sweep=%s",
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
                sweep_dir,
            )
            return
        print_report_table(report)


def _select(config, key: str):
    """A config value resolved, or None where it cannot be (e.g. a ${hydra:...} of a job)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(config, key, default=None)
    except Exception:  # an interpolation that only a job can resolve
        return None


def print_report_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sweep {report['sweep_dir']}: best validation per job", header_style="bold")
    for col in ("job", "overrides", "bpp", "PSNR dB", "MS-SSIM", "objective"):
        table.add_column(col, justify="left" if col == "overrides" else "right")

    def fmt(v, f):
        if isinstance(v, (list, tuple)):  # a multi-objective search
            return ", ".join(fmt(x, f) for x in v)
        return "-" if v is None else format(v, f)

    for r in report["table"]:
        table.add_row(
            str(r["job"]), r["label"], fmt(r["bpp"], ".4f"), fmt(r["psnr"], ".2f"), fmt(r["ms_ssim"], ".4f"), fmt(r["objective"], ".4f")
        )
    console = Console(width=max(Console().width, 110))
    console.print(table)
    evaluation = report.get("evaluation")
    if evaluation:
        for ln, against in evaluation["bd_rate"].items():
            text = ", ".join(f"{on} {e['psnr']:+.1f} %" for on, e in against.items() if e.get("psnr") is not None)
            if text:
                console.print(f"BD-rate (PSNR) of {ln}: {text}")
    console.print(
        f"report: {report['sweep_dir']}/{REPORT_JSON}, {REPORT_CSV}, {REPORT_PLOT}" + (f", {EVALUATION_DIR}/" if evaluation else "")
    )
