"""The training job behind train.py: instantiate everything from the composed config, fit, summarise."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from compressml.errors import CompressMLError, ConfigError
from compressml.loggers import wandb_run_dir
from compressml.resolvers import register_resolvers
from compressml.systems.lae import plain

register_resolvers()

log = logging.getLogger(__name__)

SUMMARY_METRICS = (  # shown when the family logs them
    ("val/loss", "loss"),
    ("val/psnr", "PSNR (dB)"),
    ("val/ms_ssim", "MS-SSIM"),
    ("val/bpp", "bpp (estimated)"),
    ("val/bpp_code", "bpp of the fixed code"),
    ("val/bpp_real", "bpp (real file)"),
    ("val/psnr_real", "PSNR decoded (dB)"),
    ("val/block_bytes_max", "largest block payload (bytes)"),
    ("val/bpsp", "bits per sub-pixel (estimated)"),
    ("val/bpsp_real", "bits per sub-pixel (real file)"),
    ("val/exact", "decoded bit-exact (fraction)"),
    ("val/psnr_y", "Y-PSNR (dB)"),
    ("val/psnr_y_bicubic", "Y-PSNR of bicubic (dB)"),
    ("val/ssim_y", "Y-SSIM"),
    ("val/aux_loss", "aux loss"),
)


def instantiate(node: Any, what: str, **kwargs):
    """Hydra's instantiate, with user mistakes turned into one-line :class:`CompressMLError`."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, CompressMLError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, CompressMLError):
            raise cause from None
        detail = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else str(e).splitlines()[0]
        raise ConfigError(f"{what}: {detail}") from None


def check_config(cfg: DictConfig) -> None:
    """Missing mandatory values and impossible paths, before anything heavy starts."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        example = " ".join(f"{k}=..." for k in missing)
        raise ConfigError(f"missing required config value(s): {', '.join(missing)} (set them, e.g. {example})")
    for key in ("ckpt_path", "init_from"):
        if cfg.get(key):
            from compressml.errors import CheckpointError
            from compressml.systems.loading import read_checkpoint

            if key == "init_from" and (Path(cfg[key]).is_dir() or Path(cfg[key]).name == "manifest.json"):
                if not (Path(cfg[key]) / "manifest.json").is_file() and not Path(cfg[key]).is_file():
                    raise ConfigError(f"init_from: {cfg[key]}: a folder without an export bundle's manifest.json")
                continue  # an export bundle (init_from only)
            try:
                read_checkpoint(cfg[key])
            except CheckpointError as e:
                raise ConfigError(f"{key}: {e}") from None


def _build_all(section: Any, what: str) -> list:
    if not section:
        return []
    return [instantiate(node, f"{what}.{name}") for name, node in section.items() if node and "_target_" in node]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured model; returns the run summary (also printed as a table)."""
    check_config(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

    started = time.time()
    model = instantiate(cfg.model, "model", g=plain(cfg.g))
    if cfg.get("init_from"):
        from compressml.systems.loading import init_weights

        init_weights(model, cfg.init_from)
    datamodule = instantiate(cfg.data, "data")
    model.adapt_datamodule(datamodule)
    callbacks = _build_all(cfg.get("callbacks"), "callbacks")
    loggers = _build_all(cfg.get("logger"), "logger")
    if not loggers:  # an LR monitor needs somewhere to log to
        callbacks = [c for c in callbacks if type(c).__name__ != "LearningRateMonitor"]
    trainer: pl.Trainer = instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)

    config = {**OmegaConf.to_container(cfg, resolve=True), "overrides": job_overrides()}  # the full config
    for lg in loggers:
        lg.log_hyperparams(config)

    from compressml.distributed import launch_context

    with launch_context(trainer):  # DDP: the processes Lightning starts run this job (multiruns too)
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)

    summary = make_summary(trainer, model, datamodule, loggers, time.time() - started)
    summary["objective"] = None
    try:
        summary["objective"] = objective(plain(cfg.get("optimized_metric")), summary)
    finally:  # the run's summary is kept even when its objective is wrongly named
        if trainer.is_global_zero:
            write_summary(Path(cfg.paths.output_dir) / SUMMARY_FILE, summary, cfg)
    finish_loggers(loggers, summary)
    print_summary(summary)
    return summary


SUMMARY_FILE = "summary.json"  # in each run's directory: what sweeps gather (compressml.sweeps)


def objective(metric, summary: dict[str, Any]) -> float | list[float] | None:
    """The value train.py returns (``optimized_metric`` at the best validation; a list of metrics
    for a multi-objective search), for sweepers."""
    if not metric:
        return None
    if not isinstance(metric, str):
        return [objective(m, summary) for m in metric]
    best = summary["best"]
    if not any(k.startswith("val/") for k in best):  # no validation ran (e.g. max_steps reached first)
        log.warning("optimized_metric=%s: no validation ran, so there is no objective to return", metric)
        return None
    if metric not in best:
        known = ", ".join(sorted(k for k in best if k.startswith("val/"))) or "none (no validation ran)"
        raise ConfigError(f"optimized_metric={metric!r} was not logged; logged: {known}")
    return float(best[metric])


def write_summary(path: Path, summary: dict[str, Any], cfg: DictConfig) -> None:
    """``summary.json``: the summary plus this job's overrides and the full config (plain JSON)."""
    import json

    from compressml.codec.files import atomic_write

    doc = {**summary, "overrides": job_overrides(), "config": OmegaConf.to_container(cfg, resolve=True)}
    text = json.dumps(doc, indent=1, default=str)
    atomic_write(path, lambda tmp: tmp.write_text(text), force=True)


def job_overrides() -> list[str]:
    """The command-line overrides of this Hydra job (a sweep job's own values), if Hydra runs it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


@rank_zero_only  # under DDP only global rank 0 has the loggers' runs
def finish_loggers(loggers, summary: dict[str, Any]) -> None:
    """Close W&B runs (each job of a multirun gets its own run) with the summary attached."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger" and lg._experiment is not None:
            run = lg.experiment
            run.summary.update({f"best/{k}": v for k, v in summary["best"].items()})
            run.finish()


def make_summary(trainer: pl.Trainer, model, datamodule, loggers, seconds: float) -> dict[str, Any]:
    ckpt = trainer.checkpoint_callback
    best = dict(getattr(model, "best_val", {}) or {})
    if not best:  # no validation finished after the sanity check: report the latest values
        best = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    wandb_dirs = [d for d in (wandb_run_dir(lg) for lg in loggers if type(lg).__name__ == "WandbLogger") if d]
    return {
        "best": best,
        "best_checkpoint": getattr(ckpt, "best_model_path", None) or None,
        "last_checkpoint": (getattr(ckpt, "last_model_path", None) or None) if ckpt else None,
        "wandb_run_dir": wandb_dirs[0] if wandb_dirs else None,
        "log_dirs": [lg.log_dir for lg in loggers if getattr(lg, "log_dir", None)],
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "train_images": len(getattr(datamodule, "train_items", [])),
        "val_images": len(getattr(datamodule, "val_items", [])),
        "skipped_images": len(getattr(datamodule, "skipped", [])),
        "seconds": round(seconds, 1),
    }


@rank_zero_only  # one table, not one per DDP process
def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="compressml training summary", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    best = summary["best"]
    if "epoch" in best:
        table.add_row("best epoch / step", f"{best['epoch']} / {best['step']}")
    for key, label in SUMMARY_METRICS:
        if key in best:
            table.add_row(f"best val {label}", f"{best[key]:.4f}")
    table.add_row("steps / wall time", f"{summary['global_step']} / {summary['seconds']:.0f} s")
    table.add_row(
        "images train / val / skipped",
        f"{summary['train_images']} / {summary['val_images']} / {summary['skipped_images']}",
    )
    table.add_row("best checkpoint", str(summary["best_checkpoint"]))
    table.add_row("last checkpoint", str(summary["last_checkpoint"]))
    table.add_row("W&B run directory", str(summary["wandb_run_dir"]))
    Console(width=max(Console().width, 100)).print(table)


def compose(overrides: list[str], output_dir: str | Path, config_name: str = "train", root_dir: str | Path | None = None) -> DictConfig:
    """A config from ``conf/`` composed as its entry point would compose it, with every output under
    ``output_dir``: for calling :func:`train` (or evaluation) from plain Python, benchmarks and tests."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir)
        if root_dir is not None:
            cfg.paths.root_dir = str(root_dir)
        del cfg["hydra"]
    return cfg
