"""Logger factories that need a decision at run time (W&B online or offline)."""

from __future__ import annotations

import os
from collections.abc import Sequence


def wandb_logger(
    save_dir: str,
    offline: bool | None = None,
    project: str = "compressml",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    log_model: bool = False,
    **kwargs,
):
    """A Lightning ``WandbLogger``; offline unless ``WANDB_API_KEY`` is set (``offline=None``)."""
    from pytorch_lightning.loggers import WandbLogger

    if offline is None:
        offline = not os.environ.get("WANDB_API_KEY")
    os.makedirs(save_dir, exist_ok=True)
    sweep = hydra_sweep()
    if sweep is not None:  # the jobs of a multirun are one W&B group, each run named by its job number
        group = group or sweep["group"]
        name = f"{name or 'job'}-{sweep['job']}"
    return WandbLogger(
        save_dir=save_dir,
        offline=offline,
        project=project,
        name=name,
        group=group,
        tags=list(tags) if tags else None,
        log_model=log_model,
        **kwargs,
    )


def sweep_group(sweep_dir: str | os.PathLike, task_name: str) -> str:
    """The W&B group of a multirun's runs (and of the report it ends with): task and sweep folder."""
    return f"{task_name}-{os.path.basename(os.path.normpath(str(sweep_dir)))}"


def hydra_sweep() -> dict | None:
    """In a Hydra multirun job: its sweep's ``dir`` and W&B ``group`` and this ``job``'s number; else None."""
    from compressml.distributed import multirun_job_config

    hc = multirun_job_config()
    if hc is None:
        return None
    # the job's own folder is inside the sweep's: its parent names the sweep whatever the launcher
    sweep_dir = os.path.dirname(os.path.normpath(hc.runtime.output_dir))
    return {"dir": sweep_dir, "group": sweep_group(sweep_dir, hc.job.name), "job": hc.job.num}


def wandb_run_dir(logger) -> str | None:
    """The directory of a W&B run (holds ``files/`` and the ``.wandb`` history), if any."""
    try:
        run = logger.experiment
        return os.path.dirname(run.dir) if run is not None and getattr(run, "dir", None) else None
    except Exception:  # a logger that never started has no run
        return None


_WANDB_BLOCK = 32 * 1024
_WANDB_HEADER = 7  # b":W&B", magic 0xBEE1, version byte


def _offline_records(run_dir: str):
    """The protobuf ``Record``s of an offline W&B run, read from its ``.wandb`` file.

    Recent wandb versions keep an offline run's metrics and config only in that append-only
    log (LevelDB log framing: 32 KiB blocks of records, each a 7-byte header then a chunk of
    a protobuf ``Record``), so this is how a test or a script can check what a run logged
    without syncing it.
    """
    import glob
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    files = glob.glob(os.path.join(run_dir, "*.wandb"))
    if not files:
        return
    with open(files[0], "rb") as f:
        data = f.read()
    pending, pos = b"", _WANDB_HEADER
    while pos + 7 <= len(data):
        left_in_block = _WANDB_BLOCK - pos % _WANDB_BLOCK
        if left_in_block < 7:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind not in (1, 4):  # FULL or LAST completes a record
            continue
        record = pb.Record()
        record.ParseFromString(pending)
        pending = b""
        yield record


def _items(items) -> dict:
    import json

    out = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        try:
            out[key] = json.loads(item.value_json)
        except ValueError:
            out[key] = item.value_json
    return out


def read_wandb_offline_history(run_dir: str) -> list[dict[str, float | str]]:
    """The history rows (logged metrics) of an offline W&B run."""
    return [_items(r.history.item) for r in _offline_records(run_dir) if r.WhichOneof("record_type") == "history"]


def read_wandb_offline_config(run_dir: str) -> dict:
    """The config of an offline W&B run (every config update merged), e.g. the full Hydra config."""
    config: dict = {}
    for r in _offline_records(run_dir):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            config.update(_items(r.run.config.update))
        elif kind == "config":
            config.update(_items(r.config.update))
    return config
