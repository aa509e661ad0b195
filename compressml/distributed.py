"""Distributed data parallel (``trainer=ddp``, ``trainer=ddp_sim``): what the training job adds to
Lightning's DDP so that it also works for the jobs of a Hydra multirun.

Lightning starts the other processes of a node itself, unless a scheduler already did (SLURM,
torchrun; it then starts nothing): it runs the command line of ``train.py`` again for each local
rank, pointed at this run's directory (``hydra.run.dir=<run dir> hydra.output_subdir=null``, so that
only rank 0 writes ``.hydra/``). For a plain run that command is right. For a job of a multirun it
is not: ``sys.argv`` holds the whole sweep (``-m g.lmbda=1,2,3``) and ``hydra.run.dir`` is not the
job's folder. :func:`launch_context` fixes both while the job's ``trainer.fit`` runs, and cleans up
after it so the next job of the same process can start processes of its own.

:func:`mean_over_ranks` averages a tensor over the processes: what every rank must agree on
(a Lagrange multiplier adapted during training) is computed from the mean.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from compressml.ranks import is_distributed, mean_over_ranks, sum_over_ranks

__all__ = ["is_distributed", "launch_context", "mean_over_ranks", "multirun_job_config", "sum_over_ranks"]

log = logging.getLogger(__name__)

# what Lightning's launcher puts into os.environ before starting the other processes of a node
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# command-line flags of a Hydra app that choose the config (kept, with their value, for the child)
_CONFIG_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir")
# Hydra overrides that describe the sweep or its launch rather than the job
_SWEEP_KEYS = (
    "hydra.mode",
    "hydra.sweep",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.run",
    "hydra.job.num",
    "hydra.job.id",
    "hydra.job.name",
    "hydra.output_subdir",
)
# how long rank 0 waits, after fit, for the processes it started to finish
CHILD_EXIT_TIMEOUT_S = 300


def child_arguments(argv: Sequence[str], task_overrides: Sequence[str], hydra_overrides: Sequence[str]) -> list[str]:
    """The command line (without the script) that runs one job of a multirun as a plain run.

    Keeps the flags that choose the config (``--config-name`` ...) from ``argv``, then the job's own
    overrides (the sweep's values for this job included), then the Hydra overrides that are not
    about the sweep, and forces ``hydra.mode=RUN`` (a config may set ``hydra.mode: MULTIRUN``).
    """
    kept: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        flag = arg.split("=", 1)[0]
        if flag in _CONFIG_FLAGS:
            kept.append(arg)
            if "=" not in arg and i + 1 < len(args):
                kept.append(args[i + 1])
                i += 1
        i += 1
    job_hydra = [o for o in hydra_overrides if not _override_key(o).startswith(_SWEEP_KEYS)]
    return [*kept, *task_overrides, *job_hydra, "hydra.mode=RUN"]


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].strip()


def multirun_job_config() -> Any | None:
    """The Hydra config of the running job when it is a job of a multirun, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return hc if hc.mode == RunMode.MULTIRUN else None


@contextmanager
def _as_plain_run(hc) -> Iterator[None]:
    """Make Lightning's launcher start this job's command in this job's folder (see the module doc)."""
    from omegaconf import OmegaConf, read_write

    saved_argv = list(sys.argv)
    saved_dir = OmegaConf.to_container(hc.run, resolve=False)["dir"]
    sys.argv = [saved_argv[0], *child_arguments(saved_argv[1:], list(hc.overrides.task), list(hc.overrides.hydra))]
    with read_write(hc.run):
        hc.run.dir = str(hc.runtime.output_dir)
    try:
        yield
    finally:
        sys.argv = saved_argv
        with read_write(hc.run):
            hc.run.dir = saved_dir


def _local_children(trainer) -> list:
    """The processes Lightning's launcher started on this node (none under SLURM, torchrun, or outside DDP)."""
    strategy = getattr(trainer, "strategy", None)
    launcher = getattr(strategy, "launcher", None) if strategy is not None else None
    return list(getattr(launcher, "procs", None) or [])


def _wait_for_children(trainer) -> None:
    import subprocess

    for proc in _local_children(trainer):
        try:
            code = proc.wait(timeout=CHILD_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("DDP process %d has not finished %d s after training; not waiting for it", proc.pid, CHILD_EXIT_TIMEOUT_S)
            continue
        if code:
            log.warning("DDP process %d (a rank > 0) exited with status %d after training", proc.pid, code)
    _forget_children(trainer)


def _forget_children(trainer) -> None:
    """Empty the launcher's list of processes: Lightning's observer thread watches that list and
    kills this process when one of them has exited with an error (it has ended, and is handled)."""
    strategy = getattr(trainer, "strategy", None)
    procs = getattr(getattr(strategy, "launcher", None), "procs", None)
    if isinstance(procs, list):
        procs.clear()


def _stop_children(trainer) -> None:
    """After a failure on this rank: the others would wait in a collective until its timeout."""
    for proc in _local_children(trainer):
        if proc.poll() is None:
            log.warning("stopping DDP process %d after a failure on rank 0", proc.pid)
            proc.kill()
            proc.wait()
    _forget_children(trainer)


@contextmanager
def launch_context(trainer) -> Iterator[None]:
    """Around ``trainer.fit(...)`` of a training job, DDP or not (outside DDP it changes nothing).

    - In a job of a Hydra multirun, the processes Lightning starts for local ranks > 0 run *this*
      job (its overrides, as a plain run in its folder) instead of the whole sweep elsewhere.
    - After a successful fit, rank 0 waits for those processes to end; after a failure it stops
      them, so that none is left waiting in a collective.
    - In a multirun, the process group and the launcher's environment variables are removed at the
      end, so the next job run by the same process starts its own processes on a fresh port.

    Processes started by a scheduler (SLURM, torchrun) are left alone: Lightning starts none then.
    """
    hc = multirun_job_config()
    saved_env = {k: os.environ.get(k) for k in LAUNCH_ENV}
    had_group = is_distributed()
    try:
        if hc is None:
            yield
        else:
            with _as_plain_run(hc):
                yield
    except BaseException:
        _stop_children(trainer)
        raise
    else:
        _wait_for_children(trainer)
    finally:
        if hc is not None:
            if is_distributed() and not had_group:
                torch.distributed.destroy_process_group()
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
