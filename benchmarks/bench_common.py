"""What the benchmark scripts share: machine description, JSON output, small statistics."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(threads: int | None = None) -> dict:
    import compressai
    import PIL
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": mem_gib,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "compressai": compressai.__version__,
        "pillow": PIL.__version__,
        "platform": platform.platform(),
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def timed_training_overrides(
    train_root: Path, minutes: float, device: str, crop: int, batch: int, repeat: int = 10, val_crop: int = 128
) -> list[str]:
    """The ``train.py`` overrides of a benchmark that trains for ``minutes`` on a folder of images:
    a 5 % validation split, no logger, no scheduler, no logged images, Lightning's ``max_time``."""
    return [
        "data=folder",
        f"data.root={train_root}",
        "data.split=ratio",
        "data.val_ratio=0.05",
        f"data.crop_size={crop}",
        f"data.val_crop_size={val_crop}",
        f"data.batch_size={batch}",
        f"data.repeat={repeat}",
        "logger=none",
        "model.scheduler=null",
        "model.log_images=0",
        "trainer.max_epochs=1000",
        f"+trainer.max_time='00:00:{int(minutes):02d}:{round(minutes % 1 * 60):02d}'",
        f"trainer.accelerator={device}",
        "trainer.devices=1",
        "callbacks.progress_bar.refresh_rate=50",
    ]


def train_timed(
    model_overrides: list[str],
    out_dir: Path,
    train_root: Path,
    minutes: float,
    device: str,
    crop: int,
    batch: int,
    repeat: int = 10,
    val_crop: int = 128,
    extra: list[str] = (),
) -> dict:
    """Train with compressml's own training (``compose`` + ``train``, outputs under ``out_dir``) for
    ``minutes``; ``extra`` overrides come last. Returns the run summary."""
    from compressml.training import compose, train

    overrides = list(model_overrides) + timed_training_overrides(train_root, minutes, device, crop, batch, repeat, val_crop)
    return train(compose(overrides + list(extra), out_dir, root_dir=ROOT))


def median(values: list[float]) -> float:
    return statistics.median(values)


def mean(values: list[float]) -> float:
    return statistics.fmean(values)


def write_json(data: dict, path: Path) -> Path:
    """Write via a .tmp file and rename (benchmarks/results/*.tmp is git-ignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def finish(results: dict, out: Path, print_tables, started: float) -> int:
    """Record the end of a run, print its tables, write its JSON and say where."""
    results["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    results["seconds"] = round(time.perf_counter() - started, 1)
    print_tables(results)
    path = write_json(results, out)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({results['seconds']:.0f} s)")
    return 0
