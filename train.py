"""Train a model: `python train.py model=lae g=rate_distortion` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from compressml.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from compressml.training import train

    summary = exit_on_user_error(train, cfg)
    return summary["objective"]  # optimized_metric: what hparams_search sweepers optimise


if __name__ == "__main__":
    main()
