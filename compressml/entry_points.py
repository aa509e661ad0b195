"""The Hydra entry points (train, evaluate, export) over the shipped configs, for ``train.py`` /
``evaluate.py`` / ``export.py`` in a checkout and for ``compressml train|evaluate|export`` (or
``python -m compressml.train``) from an installed package.

The configs are ``conf/`` at the top of a checkout; a wheel carries a copy as ``compressml/conf``
(setup.py puts it there when it builds)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from compressml.errors import exit_on_user_error
from compressml.resolvers import register_resolvers

register_resolvers()


def config_dir() -> Path:
    """``conf/`` of the checkout this package lies in, else the copy inside the installed package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no compressml configs beside {here} (conf/train.yaml)")


CONF = str(config_dir())


@hydra.main(version_base="1.3", config_path=CONF, config_name="train")
def train(cfg: DictConfig) -> float | None:
    """``python train.py model=lae g=rate_distortion``: see conf/train.yaml."""
    from compressml.distributed import multirun_job_config
    from compressml.training import train as run

    if multirun_job_config() is not None:  # a sweep job: Hydra records the error and the sweep goes on
        summary = run(cfg)
    else:
        summary = exit_on_user_error(run, cfg)
    return summary["objective"]  # optimized_metric: what hparams_search sweepers optimise


@hydra.main(version_base="1.3", config_path=CONF, config_name="evaluate")
def evaluate(cfg: DictConfig) -> None:
    """``python evaluate.py checkpoint=PATH data=kodak``: see conf/evaluate.yaml."""
    from compressml.evaluation import evaluate_from_config, print_report

    result = exit_on_user_error(evaluate_from_config, cfg)
    print_report(result)


@hydra.main(version_base="1.3", config_path=CONF, config_name="export")
def export(cfg: DictConfig) -> None:
    """``python export.py checkpoint=PATH out=DIR``: see conf/export.yaml."""
    from compressml.export import export_from_config, format_summary

    summary = exit_on_user_error(export_from_config, cfg)
    print(format_summary(summary))
