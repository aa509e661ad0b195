"""Train a model: `python train.py model=lae g=rate_distortion` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from compressml.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from compressml.distributed import multirun_job_config
    from compressml.training import train

    if multirun_job_config() is not None:  # a sweep job: Hydra records the error and the sweep goes on
        summary = train(cfg)
    else:
        summary = exit_on_user_error(train, cfg)
    return summary["objective"]  # optimized_metric: what hparams_search sweepers optimise


if __name__ == "__main__":
    main()
