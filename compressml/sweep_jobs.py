"""The jobs of a Hydra multirun (``train.py -m ...``), read from their folders: what
``evaluate.py sweep=DIR`` and the sweep report (:mod:`compressml.sweeps`) are made of.

Each training job writes ``summary.json`` into its folder (:data:`compressml.training.SUMMARY_FILE`):
its best validation metrics, checkpoints and overrides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from compressml.errors import DataError


@dataclass
class SweepJob:
    """One job of a sweep: its folder, number, overrides, best checkpoint (if any) and summary."""

    directory: Path
    number: int
    overrides: list[str]
    checkpoint: Path | None
    summary: dict = field(default_factory=dict)
    label: str = ""  # the overrides that tell it from the other jobs


def _read_summary(directory: Path) -> dict:
    from compressml.training import SUMMARY_FILE

    path = directory / SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable job summary ({e})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: not a job summary")
    return doc


def _read_overrides(directory: Path) -> list[str]:
    """``.hydra/overrides.yaml`` (a YAML list of strings), for jobs that did not finish."""
    from omegaconf import ListConfig, OmegaConf

    path = directory / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        doc = OmegaConf.load(path)
    except Exception as e:  # yaml errors come in several types
        raise DataError(f"{path}: unreadable ({e})") from None
    return [str(o) for o in doc] if isinstance(doc, ListConfig) else []


def _job_checkpoint(directory: Path, summary: dict) -> Path | None:
    """The job's best checkpoint: the one its summary names (found again in ``checkpoints/`` if the
    sweep folder moved), else the newest non-``last`` checkpoint, else ``last.ckpt``."""
    folder = directory / "checkpoints"
    for key in ("best_checkpoint", "last_checkpoint"):
        named = summary.get(key)
        if named:
            for candidate in (Path(named), folder / Path(named).name):
                if candidate.is_file():
                    return candidate
    found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    best = [p for p in found if p.name != "last.ckpt"]
    return (best or found or [None])[-1]


def _job_number(directory: Path, fallback: int) -> int:
    return int(directory.name) if directory.name.isdigit() else fallback


def _short(override: str) -> str:
    """``key=0.00024156772025296256`` -> ``key=0.0002416`` (Optuna's samples); anything else as is."""
    key, sep, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}{sep}{number:.4g}" if "." in value or "e" in value.lower() else override


def distinguishing_labels(overrides: list[list[str]]) -> list[str]:
    """Each job's label: its overrides that are not the same in every job (``g.lmbda=0.0035``); all
    of them when none differ."""
    common = set.intersection(*(set(o) for o in overrides)) if len(overrides) > 1 else set()
    labels = []
    for own in overrides:
        label = ",".join(_short(o) for o in own if o not in common) or ",".join(_short(o) for o in own)
        labels.append(label.replace("/", "-") or "job")
    return labels


def sweep_jobs(sweep_dir: str | Path) -> list[SweepJob]:
    """Every job folder of a multirun (those with a ``summary.json`` or ``.hydra/overrides.yaml``),
    in job order, with a label made of the overrides that differ between jobs."""
    root = Path(sweep_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"sweep: no such folder: {root}")
    jobs = []
    for i, directory in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        summary = _read_summary(directory)
        overrides = list(summary.get("overrides") or []) or _read_overrides(directory)
        if not summary and not (directory / ".hydra").is_dir():
            continue
        jobs.append(SweepJob(directory, _job_number(directory, i), overrides, _job_checkpoint(directory, summary), summary))
    if not jobs:
        raise DataError(f"sweep: {root} holds no job folders of a train.py multirun (each with summary.json or .hydra/)")
    jobs.sort(key=lambda j: j.number)
    labels = distinguishing_labels([j.overrides for j in jobs])
    for job, label in zip(jobs, labels):
        job.label = label if labels.count(label) == 1 else f"{label}@{job.number}"
    return jobs
